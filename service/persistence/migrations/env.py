from __future__ import annotations

from alembic import context

from service.persistence.models import Base, make_engine

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url is not None
engine = make_engine(url)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=engine.dialect.name == "sqlite",
        # procrastinate's tables are installed by migration 0002 from its own schema, not from our models
        include_name=lambda name, kind, _: not (kind == "table" and str(name).startswith("procrastinate")),
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
