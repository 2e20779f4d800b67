from sqlalchemy import text

from udx.db import migrate


def test_schema_is_current(db):
    assert migrate.status(db).up_to_date
    with db.connect() as conn:
        assert conn.execute(text("select count(*) from user_data_export")).scalar() == 0
