"""The processes under the app: gunicorn's worker class, CPU pinning, pool-process set-up, and
state that must not cross a fork. gunicorn.conf.py shows how they fit in the process tree."""
