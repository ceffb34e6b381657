"""The one administrator every test logs in as (in-process apps and `python app.py` alike)."""
from auth.passwords import hash_password

USERNAME = "admin"
PASSWORD = "correct-horse-battery"
PASSWORD_HASH = hash_password(PASSWORD, rounds=4)  # cost 4: fast tests, same code path
