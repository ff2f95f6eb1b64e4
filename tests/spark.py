"""A local Spark 3.5 for tests: the `spark` fixture and `analyze(spark, sql)`.

`spark` is one SparkSession per test process (session scope: with `pytest -n 2 --dist loadfile`
each worker that runs a Spark test file starts one, in 2-6 s). It keeps Spark's DEFAULT parquet
datetime rebase settings (`spark.sql.parquet.datetimeRebaseModeInRead=EXCEPTION`, ...), which are
what a Databricks runtime on Spark 3.x reads staged files with: do not set them here, or the test
of the files dlt writes proves nothing. The session time zone is UTC, Databricks' default.

The fixture skips (with the reason) only where pyspark is not installed or no Java runtime can be
found or installed (`scripts/ensure-java.sh`, which `make install` also runs).

Tests use it by naming the fixture; tests/conftest.py imports it so that every test file sees it.
"""

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]


def _java_available() -> bool:
    if os.environ.get("JAVA_HOME") and (Path(os.environ["JAVA_HOME"]) / "bin" / "java").exists():
        return True
    return shutil.which("java") is not None


def _ensure_java() -> None:
    """Java or a skip. Installs it (Debian, as root) the way `make install` does."""
    if _java_available():
        return
    subprocess.run([str(REPO / "scripts" / "ensure-java.sh")], check=False)
    if not _java_available():
        pytest.skip("no Java runtime for Spark: `java` is not on PATH and scripts/ensure-java.sh "
                    "could not install one (needs root and apt-get); install a JRE 17 or set "
                    "JAVA_HOME")


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A local SparkSession (pyspark 3.5, `local[1]`, default parquet rebase settings)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        pytest.skip("pyspark is not installed: pip install -r requirements-dev.txt")
    _ensure_java()
    # Spark resolves the host name to pick its address; 127.0.0.1 keeps it off the network.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    warehouse = tmp_path_factory.mktemp("spark-warehouse")
    # Errors only, from the JVM's first line on (Spark's default profile logs WARN and up, and
    # sparkContext.setLogLevel comes too late for the start-up lines).
    log_config = warehouse / "log4j2.properties"
    log_config.write_text("rootLogger.level = error\nrootLogger.appenderRef.stderr.ref = console\n"
                          "appender.console.type = Console\nappender.console.name = console\n"
                          "appender.console.target = SYSTEM_ERR\n"
                          "appender.console.layout.type = PatternLayout\n"
                          "appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n\n"
                          # A failed task is logged with its stack trace, then raised in Python
                          # with the same message: log it once only.
                          "logger.executor.name = org.apache.spark.executor.Executor\n"
                          "logger.executor.level = off\n"
                          "logger.tasks.name = org.apache.spark.scheduler.TaskSetManager\n"
                          "logger.tasks.level = off\n"
                          # pyspark starts Spark as a shell would: Spark prints the level of
                          # this logger unless it equals the root level.
                          "logger.gateway.name = org.apache.spark.api.python.PythonGatewayServer\n"
                          "logger.gateway.level = error\n")
    session = (
        SparkSession.builder.master("local[1]")
        .appName("pg_replication-tests")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.memory", "512m")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.warehouse.dir", str(warehouse))
        .config("spark.driver.extraJavaOptions",
                f"-Dlog4j2.configurationFile={log_config} -Dderby.system.home={warehouse}")
        .getOrCreate()
    )
    try:
        yield session
    finally:
        session.stop()


def analyze(spark: Any, sql: str) -> Any:
    """Parses and analyzes one SQL statement without executing it (nothing is created, written
    or dropped); returns Spark's analyzed logical plan (a JVM object: `plan.toString()` prints
    the tree). Raises pyspark's `ParseException` or `AnalysisException`, whose text starts with
    Spark's error class (`[UNRESOLVED_COLUMN.WITH_SUGGESTION]`, `[INVALID_EXTRACT_BASE_FIELD_TYPE]`
    ...), where Spark refuses the statement; a few JVM errors arrive as py4j's `Py4JJavaError`.

    What it checks with plain Spark 3.5 (no Delta jars: these machines cannot download them):
    - Spark SQL's grammar: SELECT, INSERT INTO / INSERT OVERWRITE, MERGE INTO (all clauses, `WHEN
      NOT MATCHED BY SOURCE` included), DELETE FROM, UPDATE, CREATE TABLE [AS SELECT], DROP,
      TRUNCATE;
    - names and types against the tables and views of the session: create the target and
      staging tables first (`CREATE TABLE ... USING parquet`, or temp views), then unknown or
      ambiguous columns, an alias that resolves to a column instead (`DELETE FROM t AS d ...
      d.key` when `t` has a column `d`), wrong column counts and unsafe casts in INSERT fail as
      they would on Databricks.

    What it cannot check (or refuses where Databricks would not):
    - anything naming Delta: `USING DELTA` (`DATA_SOURCE_NOT_FOUND`, a `Py4JJavaError`),
      `CREATE OR REPLACE TABLE` (parquet tables cannot be replaced:
      `UNSUPPORTED_FEATURE.TABLE_OPERATION`), `INSERT OVERWRITE` of a table the query also reads
      (`UNSUPPORTED_OVERWRITE.TABLE`; Delta allows it), `CREATE TABLE ... CLONE`, `COPY INTO`,
      `OPTIMIZE`, `VACUUM` (parse errors), what `TBLPROPERTIES` mean;
    - Unity Catalog names: `catalog.schema.table` fails (`REQUIRES_SINGLE_PART_NAMESPACE`); use
      `schema.table` (`CREATE SCHEMA` it first) or `spark_catalog.schema.table`; volumes;
    - execution: DELETE, UPDATE and MERGE analyze against parquet tables but cannot run (they
      need Delta's row-level operations), so MERGE's "multiple source rows matched" and the like
      stay untested.
    """
    jsession = spark._jsparkSession  # noqa: SLF001 - no public API analyzes without executing
    plan = jsession.sessionState().sqlParser().parsePlan(sql)
    jvm = spark.sparkContext._jvm  # noqa: SLF001
    # SKIP: a command in the plan (CREATE, INSERT, MERGE...) is analyzed, never run.
    execution = jsession.sessionState().executePlan(
        plan, jvm.org.apache.spark.sql.execution.CommandExecutionMode.SKIP())
    execution.assertAnalyzed()
    return execution.analyzed()
