#!/usr/bin/env bash
# make android-check: compile every Kotlin source of android_demo/ with -Werror, here, without the
# Android SDK or Google Maven (see ../shared/docs/android-build.md for why each piece comes from where).
#
#   scripts/android_check.sh [--src DIR]     DIR: the app's Kotlin source root (default: the app's own)
#
# Toolchain, fetched once into $DMAD_ANDROID_CACHE (default ~/.cache/dmad-android), never committed:
#   kotlinc   npm package kotlin-compiler at the version the app's version catalog pins (libs.versions.toml)
#   javac     Debian's openjdk-17-jdk-headless (when missing)
#   aapt      Debian's aapt (bookworm; resources -> R.java)
#   android   Debian bullseye's libandroid-23-java (android.jar), read through a private apt list
# LiteRT / androidx classes are not on any registry this machine reaches: the app compiles against the
# stubs in android_demo/stubs/, each written from the real public API of the pinned version (header line).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
APP="$ROOT/android_demo"
SRC="$APP/app/src/main/java"
while [ $# -gt 0 ]; do
  case "$1" in
    --src) SRC="$(cd "$2" && pwd)"; shift 2 ;;
    *) echo "android-check: unknown argument $1 (use --src DIR)" >&2; exit 2 ;;
  esac
done
CACHE="${DMAD_ANDROID_CACHE:-$HOME/.cache/dmad-android}"
mkdir -p "$CACHE"
say() { echo "android-check: $*" >&2; }

# -- toolchain (kotlin_toolchain.sh: KOTLIN_VERSION, KHOME, apt_install) ----------------------
. "$ROOT/scripts/kotlin_toolchain.sh"
KOTLINC="$KHOME/bin/kotlinc"
COROUTINES="$KHOME/lib/kotlinx-coroutines-core-jvm.jar"
command -v javac >/dev/null 2>&1 || apt_install openjdk-17-jdk-headless
command -v aapt >/dev/null 2>&1 || apt_install aapt

ANDROID_JAR="$CACHE/android-23/usr/lib/android-sdk/platforms/android-23/android.jar"
if [ ! -f "$ANDROID_JAR" ]; then
  say "fetching android.jar (Debian bullseye libandroid-23-java)"
  A="$CACHE/apt-bullseye"
  mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/debs"
  echo "deb http://deb.debian.org/debian bullseye main" > "$A/sources.list"
  O=(-o "Dir::Etc::SourceList=$A/sources.list" -o Dir::Etc::SourceParts=/nonexistent
     -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache" -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
  apt-get "${O[@]}" update -qq >/dev/null
  (cd "$A/debs" && apt-get "${O[@]}" download libandroid-23-java >/dev/null)
  rm -rf "$CACHE/android-23.tmp" && dpkg -x "$A"/debs/libandroid-23-java_*.deb "$CACHE/android-23.tmp"
  mv "$CACHE/android-23.tmp" "$CACHE/android-23"
fi

# -- build -------------------------------------------------------------------------------------
W="$(mktemp -d "${TMPDIR:-/tmp}/dmad-android-check.XXXXXX")"
trap 'rm -rf "$W"' EXIT
STUBS="$APP/stubs"
mkdir -p "$W/stubs" "$W/gen" "$W/r" "$W/app"
# 0. API 26's generic Activity.findViewById<T> over the API 23 jar (signature only, see the tool)
mkdir -p "$W/sdk26/android/app" "$W/tool"
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("android/app/Activity.class", sys.argv[2])' \
  "$ANDROID_JAR" "$W/sdk23"
javac -nowarn --add-exports java.base/jdk.internal.org.objectweb.asm=ALL-UNNAMED -d "$W/tool" \
  "$STUBS/tools/GenericFindViewById.java"
java --add-exports java.base/jdk.internal.org.objectweb.asm=ALL-UNNAMED -cp "$W/tool" GenericFindViewById \
  "$W/sdk23/android/app/Activity.class" "$W/sdk26/android/app/Activity.class"
ANDROID_CP="$W/sdk26:$ANDROID_JAR"
# 1. stubs: Kotlin ones (lifecycle, activity result API), then Java ones (activities, widgets, LiteRT)
"$KOTLINC" -jvm-target 1.8 -cp "$ANDROID_CP:$COROUTINES" -d "$W/stubs" "$STUBS"/kotlin/*.kt 2>"$W/stubs.log" \
  || { cat "$W/stubs.log" >&2; say "the stubs do not compile"; exit 1; }
find "$STUBS/java" -name '*.java' > "$W/stubs.txt"
javac -nowarn -Xlint:-options --release 8 -cp "$ANDROID_CP:$W/stubs:$CACHE/kotlin-$KOTLIN_VERSION/package/lib/kotlin-stdlib.jar" \
  -d "$W/stubs" @"$W/stubs.txt" 2>"$W/javac.log" || { cat "$W/javac.log" >&2; say "the Java stubs do not compile"; exit 1; }
# 2. resources -> R.java (the manifest gets the package and SDK levels that Gradle would inject)
PKG="$(sed -n 's/.*namespace *= *"\([^"]*\)".*/\1/p' "$APP/app/build.gradle.kts")"
MIN_SDK="$(sed -n 's/.*minSdk *= *\([0-9]*\).*/\1/p' "$APP/app/build.gradle.kts")"
# configChanges "density" is an API 24 flag API 23's aapt refuses: the check drops it from its copy
sed "s#<manifest #<manifest package=\"$PKG\" #; s#|density##; s#\(<manifest[^>]*>\)#\1<uses-sdk android:minSdkVersion=\"$MIN_SDK\" android:targetSdkVersion=\"23\" />#" \
  "$APP/app/src/main/AndroidManifest.xml" > "$W/AndroidManifest.xml"
aapt package -f -m -J "$W/gen" -M "$W/AndroidManifest.xml" -S "$APP/app/src/main/res" -S "$STUBS/res" \
  --auto-add-overlay -I "$ANDROID_JAR" >"$W/aapt.log" 2>&1 || { cat "$W/aapt.log" >&2; say "aapt failed on the app's resources"; exit 1; }
javac -nowarn --release 8 -d "$W/r" $(find "$W/gen" -name '*.java') 2>"$W/r.log" || { cat "$W/r.log" >&2; exit 1; }
# 3. every Kotlin source of the app, warnings as errors
find "$SRC" -name '*.kt' | sort > "$W/app.txt"
N="$(wc -l < "$W/app.txt")"
[ "$N" -gt 0 ] || { say "no Kotlin sources under $SRC"; exit 1; }
if ! "$KOTLINC" -Werror -jvm-target 17 -cp "$ANDROID_CP:$W/stubs:$W/r:$COROUTINES" -d "$W/app" \
    $(cat "$W/app.txt") >"$W/kotlinc.log" 2>&1; then
  grep -E "error:|warning:" "$W/kotlinc.log" >&2 || cat "$W/kotlinc.log" >&2
  say "FAILED: the app's Kotlin sources do not compile (kotlinc $KOTLIN_VERSION, -Werror)"
  exit 1
fi
WARN="$(grep -c "warning:" "$W/kotlinc.log" || true)"
echo "android-check: compiled $N Kotlin files with kotlinc $KOTLIN_VERSION (-Werror, $WARN warnings) against android.jar (API 23), R and $(find "$STUBS" -name '*.java' -o -name '*.kt' | wc -l) stub files"
