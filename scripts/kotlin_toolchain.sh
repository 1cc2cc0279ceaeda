# Sourced by android_check.sh and android_unit_tests.sh (not run alone): the one kotlinc both use.
#
# Expects APP (android_demo/), CACHE ($DMAD_ANDROID_CACHE) and a say() of the caller's prefix.
# Sets KOTLIN_VERSION (what the app's version catalog pins) and KHOME (the compiler's package
# folder: bin/kotlinc, lib/, build.txt), fetching the npm package kotlin-compiler into CACHE once.
# apt_install installs Debian packages of this machine's release when a caller lacks them.
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo -n"
apt_install() {
  say "installing Debian's $*"
  $SUDO apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

KOTLIN_VERSION="$(sed -n 's/^kotlin *= *"\([^"]*\)".*/\1/p' "$APP/gradle/libs.versions.toml")"
[ -n "$KOTLIN_VERSION" ] || { say "no kotlin version in gradle/libs.versions.toml"; exit 1; }
KHOME="$CACHE/kotlin-$KOTLIN_VERSION/package"
if [ ! -x "$KHOME/bin/kotlinc" ]; then
  say "fetching the Kotlin compiler $KOTLIN_VERSION from npm (kotlin-compiler@$KOTLIN_VERSION)"
  mkdir -p "$CACHE"
  rm -rf "$CACHE/kotlin-$KOTLIN_VERSION.tmp" && mkdir -p "$CACHE/kotlin-$KOTLIN_VERSION.tmp"
  (cd "$CACHE/kotlin-$KOTLIN_VERSION.tmp" && npm pack --silent "kotlin-compiler@$KOTLIN_VERSION" >/dev/null \
    && tar xzf kotlin-compiler-*.tgz && rm kotlin-compiler-*.tgz)
  mv "$CACHE/kotlin-$KOTLIN_VERSION.tmp" "$CACHE/kotlin-$KOTLIN_VERSION"
fi
BUILD_TXT="$(cat "$KHOME/build.txt")"
case "$BUILD_TXT" in "$KOTLIN_VERSION"*) ;; *) say "kotlinc is $BUILD_TXT, not $KOTLIN_VERSION"; exit 1 ;; esac
