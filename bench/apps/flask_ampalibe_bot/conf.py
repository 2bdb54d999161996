"""Configuration of the benchmark bot (values come from the harness through the environment)."""
from os import environ as env


class Configuration:
    ACCESS_TOKEN = env.get("BENCH_ACCESS_TOKEN", "token")
    VERIF_TOKEN = env.get("BENCH_VERIF_TOKEN", "verif")
    APP_SECRET = env.get("BENCH_APP_SECRET")
    GRAPH_URL = env.get("BENCH_GRAPH_URL")
    ADAPTER = "SQLITE"
    DB_FILE = env.get("BENCH_DB_FILE", "bench.db")
    # a server database (systems flask_ampalibe_pg, flask_ampalibe_mariadb) wins over the SQLite file
    DATABASE_URL = env.get("BENCH_DATABASE_URL") or "sqlite:///" + env.get("BENCH_DB_FILE", "bench.db")
    APP_HOST = "127.0.0.1"
    APP_PORT = int(env.get("BENCH_PORT", "4555"))
    APP_URL = "http://127.0.0.1:" + env.get("BENCH_PORT", "4555")
