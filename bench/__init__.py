"""`make bench` and `make load`: the service measured against the seed's apps, and under locust."""
