#!/usr/bin/env bash
# Makes sure a Java runtime exists for the local Spark the parquet tests read files with
# (tests/spark.py); installs Debian's OpenJDK 17 if not. Never fails: without Java those tests
# skip, naming the reason.
set -uo pipefail
found() {
  [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ] && return 0
  command -v java >/dev/null 2>&1 && return 0
  return 1
}
if found; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Java not found: installing Debian's openjdk-17-jre-headless (for the Spark tests)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  found && exit 0
fi
echo "Java not found and not installable here (needs root and apt-get): the Spark tests" \
     "(tests/test_spark_parquet.py) will be skipped. Install a JRE 17 or set JAVA_HOME." >&2
exit 0
