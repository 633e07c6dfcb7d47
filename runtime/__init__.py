"""The runtime under the routes: gunicorn's worker class and how it reads requests, who is refused
under overload, the Dask executor, CPU pinning, pool-process set-up, and state that must not cross
a fork. gunicorn.conf.py shows how they fit in the process tree; services/ holds what the routes
read and compute."""
