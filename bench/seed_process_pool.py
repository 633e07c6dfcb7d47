"""The seed's flask_process_pool.py (../shared/seeds/002_*), as published: trial division on a
global ProcessPoolExecutor(), one task per number."""
import json
import math
from concurrent.futures import ProcessPoolExecutor

import flask

app = flask.Flask(__name__)
process_pool = ProcessPoolExecutor()


def is_prime(n):
    """Trial division by every odd number up to sqrt(n), as the seed does."""
    if n < 2:
        return False
    if n == 2:
        return True
    if n % 2 == 0:
        return False
    sqrt_n = int(math.floor(math.sqrt(n)))
    for i in range(3, sqrt_n + 1, 2):
        if n % i == 0:
            return False
    return True


@app.route("/is_prime/<numbers>")
def api_is_prime(numbers):
    """Check each comma-separated number on the process pool."""
    number_list = [int(x) for x in numbers.split(",")]
    results = process_pool.map(is_prime, number_list)
    return json.dumps(dict(zip(number_list, results)))
