#!/usr/bin/env bash
# Runs a command and checks its exit code and that its stderr+stdout match a regex.
#   tests/cli_expect.sh EXPECTED_RC REGEX -- COMMAND [ARGS...]
# EXPECTED_RC may be "nonzero".
set -u
want_rc=$1; regex=$2; shift 3
out=$("$@" 2>&1); rc=$?
ok=1
if [ "$want_rc" = nonzero ]; then [ "$rc" -ne 0 ] || ok=0; else [ "$rc" -eq "$want_rc" ] || ok=0; fi
printf '%s' "$out" | tr '\n' ' ' | grep -Eq -- "$regex" || ok=0  # one line: regexes may span lines
if [ $ok -eq 0 ]; then
  printf 'FAILED: %s\nexpected exit %s and output matching /%s/\ngot exit %s and output:\n%s\n' "$*" "$want_rc" "$regex" "$rc" "$out"
  exit 1
fi
printf 'ok: exit %s, output matches /%s/\n' "$rc" "$regex"
