"""The seed's flask_thread_pool.py (../shared/seeds/002_*), as published: the baseline to beat.

One global ThreadPoolExecutor() -- min(32, cores + 4) = 6 threads on 2 cores -- shared by every
request, and reads that are plain sleeps of the seed's profile.
"""
import json
import time
from concurrent.futures import ThreadPoolExecutor

import flask

app = flask.Flask(__name__)
pool = ThreadPoolExecutor()


def read_file():
    """Sleep like the seed's file read."""
    time.sleep(0.1)
    return "read_file"


def read_db():
    """Sleep like the seed's database read."""
    time.sleep(0.2)
    return "read_db"


def read_api():
    """Sleep like the seed's API read."""
    time.sleep(0.3)
    return "read_api"


@app.route("/")
def index():
    """Submit the three reads to the global pool and join them."""
    result_file = pool.submit(read_file)
    result_db = pool.submit(read_db)
    result_api = pool.submit(read_api)
    return json.dumps({
        "result_file": result_file.result(),
        "result_db": result_db.result(),
        "result_api": result_api.result(),
    })
