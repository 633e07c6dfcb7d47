"""The prime test against sympy, and the parser's tables of good and bad input."""
import random

import gmpy2
import pytest
import sympy
from hypothesis import given
from hypothesis import strategies as st

from services import primes

CARMICHAEL = [561, 1105, 1729, 2465, 2821, 6601, 8911, 41041, 825265, 321197185, 5394826801,
              232250619601, 9746347772161, 1436697831295441, 60977817398996785]
# Smallest strong pseudoprimes to the first k prime bases (OEIS A014233), k = 4 .. 13; the last
# is the bound below which 13 bases are exact, so it must go through BPSW.
STRONG_PSEUDOPRIMES = [3215031751, 2152302898747, 3474749660383, 341550071728321,
                       3825123056546413051, 318665857834031151167461,
                       3317044064679887385961981]
MERSENNE_EXPONENTS = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 61, 67, 89, 107, 127, 257,
                      521, 523, 607, 1279]


def assert_matches_oracle(numbers):
    """Every number gets the same answer from services.primes as from sympy.isprime."""
    wrong = [n for n in numbers if primes.is_prime(n) != sympy.isprime(n)]
    assert wrong == []


def test_small_numbers_exhaustively():
    assert_matches_oracle(range(-10, 20000))


def test_carmichael_numbers_are_composite():
    assert not any(primes.is_prime(n) for n in CARMICHAEL)
    assert_matches_oracle(CARMICHAEL)


def test_strong_pseudoprimes_to_many_bases_are_composite():
    assert not any(primes.is_prime(n) for n in STRONG_PSEUDOPRIMES)


def test_mersenne_numbers():
    numbers = [2**p - 1 for p in MERSENNE_EXPONENTS]
    assert_matches_oracle(numbers)
    assert primes.is_prime(2**1279 - 1) and not primes.is_prime(2**523 - 1)


def test_random_64_bit_numbers():
    rng = random.Random(64)
    numbers = [rng.getrandbits(64) | 1 for _ in range(3000)]
    numbers += [sympy.nextprime(rng.getrandbits(64)) for _ in range(50)]
    assert_matches_oracle(numbers)


def test_random_300_digit_numbers():
    rng = random.Random(300)
    numbers = [rng.randrange(10**299, 10**300) | 1 for _ in range(60)]
    numbers += [sympy.nextprime(rng.randrange(10**299, 10**300)) for _ in range(5)]
    numbers += [numbers[-1] * numbers[-2]]
    assert_matches_oracle(numbers)
    assert sum(primes.is_prime(n) for n in numbers) >= 5


def test_products_of_two_primes_near_the_exact_bound():
    p = sympy.nextprime(10**12)
    q = sympy.nextprime(10**13)
    assert_matches_oracle([p * q, p * p, sympy.nextprime(3317044064679887385961981)])


def test_check_batch_keeps_order():
    assert primes.check_batch([gmpy2.mpz(4), gmpy2.mpz(7), gmpy2.mpz(1)]) == [False, True, False]


@pytest.mark.parametrize("items, expected", [
    (["1", "2", "3", "4"], ["1", "2", "3", "4"]),
    (["007"], ["7"]),
    (["+5", "5", "05"], ["5"]),
    (["-0", "0", "+0"], ["0"]),
    (["-7", "7"], ["-7", "7"]),
    (["3", "2", "1"], ["3", "2", "1"]),
    (["9" * 900] * 4, ["9" * 900]),
])
def test_parse_good_items(items, expected):
    assert list(primes.parse_items(items, max_items=10, max_digits=1000)) == expected


@pytest.mark.parametrize("items, status, words", [
    ([""], 400, "item 1"),
    (["1", "", "2"], 400, "item 2"),
    ([" 1"], 400, "not an integer"),
    (["1 "], 400, "not an integer"),
    (["1_000"], 400, "not an integer"),
    (["\u0661\u0662"], 400, "not an integer"),  # Arabic-Indic digits, which int() accepts
    (["\uff11"], 400, "not an integer"),  # a full-width 1
    (["1.5"], 400, "not an integer"),
    (["0x10"], 400, "not an integer"),
    (["1e3"], 400, "not an integer"),
    (["+"], 400, "not an integer"),
    (["--1"], 400, "not an integer"),
    ([1.5], 400, "not an integer"),
    ([None], 400, "not an integer"),
    ([[1]], 400, "not an integer"),
    ([], 400, "no numbers"),
    (["1"] * 11, 413, "too many numbers"),
    (["1" * 1001], 413, "1001 digits"),
    (["-" + "1" * 1001], 413, "1001 digits"),
])
def test_parse_bad_items(items, status, words):
    with pytest.raises(primes.InputError) as caught:
        primes.parse_items(items, max_items=10, max_digits=1000)
    assert caught.value.status == status
    assert words in str(caught.value)


def test_leading_zeros_do_not_count_as_digits():
    assert list(primes.parse_items(["0" * 50 + "13"], max_items=1, max_digits=2)) == ["13"]


def test_parse_beyond_cpythons_int_digit_limit():
    # CPython refuses int() of more than 4300 digits; the parser must not depend on it.
    big = "1" + "0" * 5000 + "1"
    assert list(primes.parse_items([big], max_items=1, max_digits=6000)) == [big]


def test_bad_item_is_shortened_in_the_message():
    with pytest.raises(primes.InputError) as caught:
        primes.parse_items(["x" * 5000], max_items=1, max_digits=10)
    assert len(str(caught.value)) < 200


def test_cost_grows_with_size():
    assert primes.cost_us(10**14) < primes.cost_us(10**99) < primes.cost_us(10**899)


def test_split_by_cost_balances_and_covers_every_position():
    numbers = [gmpy2.mpz(10) ** 899] * 4 + [gmpy2.mpz(7)] * 10
    groups = primes.split_by_cost(numbers, 2)
    assert sorted(i for group in groups for i in group) == list(range(14))
    big_per_group = [sum(1 for i in group if i < 4) for group in groups]
    assert big_per_group == [2, 2]


def test_split_by_cost_never_makes_empty_groups():
    assert primes.split_by_cost([gmpy2.mpz(5)], 8) == [[0]]


# Text that is often an integer, sometimes nearly one, sometimes anything at all.
ITEMS = st.one_of(st.from_regex(r"[+-]?[0-9]{1,30}", fullmatch=True),
                  st.from_regex(r"[ +-]?[0-9_.٣x]{0,6}", fullmatch=True), st.text(max_size=12))


@given(st.lists(ITEMS, max_size=12))
def test_any_items_give_canonical_numbers_or_a_4xx(items):
    try:
        numbers = primes.parse_items(items, max_items=10, max_digits=25)
    except primes.InputError as exc:
        assert 400 <= exc.status < 500 and str(exc)
    else:
        assert set(numbers) == {gmpy2.mpz(item).digits(10) for item in items}
        assert all(key == value.digits(10) for key, value in numbers.items())
