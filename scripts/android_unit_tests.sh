#!/usr/bin/env bash
# make android-unit-tests: the Android app's JVM unit tests (JUnit 4), here, without the Android SDK or Gradle.
#
#   scripts/android_unit_tests.sh [--src DIR] [--tests DIR]
#     --src DIR    the app's Kotlin source root (default android_demo/app/src/main/java)
#     --tests DIR  the unit tests' source root (default android_demo/app/src/test/java)
#
# The app keeps its logic (pixel mapping, model.json parsing and validation, A/B scheduling, latency
# statistics, input geometry, EXIF orientation, report text) in Kotlin files that import nothing from
# android.*, androidx.*, LiteRT or coroutines. This compiles exactly those files and the tests with
# kotlinc -Werror on a plain JVM classpath (Kotlin stdlib, junit4, hamcrest; no android.jar, so a pure
# file that reaches for Android does not compile) and runs them with JUnitCore. Gradle users run the
# same tests with `./gradlew testDebugUnitTest` (app/build.gradle.kts: testImplementation(libs.junit)).
#
# Toolchain: the kotlinc that make android-check caches in $DMAD_ANDROID_CACHE (default
# ~/.cache/dmad-android; fetched from npm here when missing) and Debian's junit4 (installed when missing).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
APP="$ROOT/android_demo"
SRC="$APP/app/src/main/java"
TESTS="$APP/app/src/test/java"
while [ $# -gt 0 ]; do
  case "$1" in
    --src) SRC="$(cd "$2" && pwd)"; shift 2 ;;
    --tests) TESTS="$(cd "$2" && pwd)"; shift 2 ;;
    *) echo "android-unit-tests: unknown argument $1 (use --src DIR, --tests DIR)" >&2; exit 2 ;;
  esac
done
CACHE="${DMAD_ANDROID_CACHE:-$HOME/.cache/dmad-android}"
say() { echo "android-unit-tests: $*" >&2; }

# -- toolchain (the same kotlinc as make android-check: kotlin_toolchain.sh) ------------------
. "$ROOT/scripts/kotlin_toolchain.sh"
command -v java >/dev/null 2>&1 || apt_install openjdk-17-jdk-headless
JUNIT=/usr/share/java/junit4.jar
HAMCREST=/usr/share/java/hamcrest-core.jar
[ -f "$JUNIT" ] && [ -f "$HAMCREST" ] || apt_install junit4
[ -f "$JUNIT" ] && [ -f "$HAMCREST" ] || { say "no $JUNIT / $HAMCREST (Debian's junit4)"; exit 1; }

# -- sources ---------------------------------------------------------------------------------------------
W="$(mktemp -d "${TMPDIR:-/tmp}/dmad-android-unit.XXXXXX")"
trap 'rm -rf "$W"' EXIT
find "$SRC" -name '*.kt' | sort | while read -r f; do
  grep -qE '^import +(android|androidx|org\.tensorflow|kotlinx\.coroutines)\.' "$f" || echo "$f"
done > "$W/pure.txt"
find "$TESTS" -name '*.kt' | sort > "$W/tests.txt"          # tests and their fixtures
grep -E 'Test\.kt$' "$W/tests.txt" > "$W/classes.txt" || true # the classes JUnit runs
[ -s "$W/pure.txt" ] || { say "no pure Kotlin sources under $SRC"; exit 1; }
[ -s "$W/classes.txt" ] || { say "no *Test.kt files under $TESTS"; exit 1; }
say "pure sources: $(xargs -n1 basename < "$W/pure.txt" | tr '\n' ' ')"

# -- compile (warnings are errors) and run ---------------------------------------------------------------
CP="$JUNIT:$HAMCREST"
if ! "$KHOME/bin/kotlinc" -Werror -jvm-target 17 -cp "$CP" -d "$W/classes" \
    $(cat "$W/pure.txt") $(cat "$W/tests.txt") >"$W/kotlinc.log" 2>&1; then
  grep -E "error:|warning:" "$W/kotlinc.log" >&2 || cat "$W/kotlinc.log" >&2
  say "FAILED: the pure sources and their tests do not compile on a plain JVM (kotlinc $KOTLIN_VERSION, -Werror)"
  exit 1
fi
CLASSES=()
while read -r f; do
  pkg="$(sed -n 's/^package \([A-Za-z0-9_.]*\).*/\1/p' "$f" | head -1)"
  CLASSES+=("${pkg:+$pkg.}$(basename "$f" .kt)")
done < "$W/classes.txt"
set +e
# From the repository root, where a test finds android_demo/MODEL_JSON.md (under Gradle: ../MODEL_JSON.md).
(cd "$ROOT" && java -cp "$W/classes:$KHOME/lib/kotlin-stdlib.jar:$CP" org.junit.runner.JUnitCore "${CLASSES[@]}") \
  >"$W/junit.log" 2>&1
RC=$?
set -e
if [ "$RC" -ne 0 ]; then
  cat "$W/junit.log" >&2
  say "FAILED: $(grep -E '^Tests run:' "$W/junit.log" || echo 'the JUnit run did not finish')"
  exit 1
fi
N="$(sed -n 's/^OK (\([0-9]*\) tests\{0,1\})$/\1/p' "$W/junit.log")"
[ -n "$N" ] && [ "$N" -gt 0 ] || { cat "$W/junit.log" >&2; say "FAILED: no test ran"; exit 1; }
echo "android-unit-tests: $N JVM tests passed in ${#CLASSES[@]} classes ($(wc -l < "$W/pure.txt") pure Kotlin files, kotlinc $KOTLIN_VERSION -Werror, JUnit 4)"
