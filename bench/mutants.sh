#!/usr/bin/env bash
# Mutation testing of the security code: every mutant cargo-mutants makes of
# the token checks, the tenancy layer, the session guard, the JWKS, Auth's
# throttle, keys, sessions and tokens must be caught by a test, or be shown
# equivalent. Slow (two to three hours on two cores), so CI does not run it.
#
#   bash bench/mutants.sh            # all three groups
#   bash bench/mutants.sh tenancy    # one group: tenancy, auth-modules, auth-tokens
#
# Results land in target/mutants/<group>/mutants.out (missed.txt lists the
# survivors). PostgreSQL and Redis tests join in when TRELLIS_TEST_DATABASE_URL
# and TRELLIS_TEST_REDIS_URL are set, as in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants
groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=(tenancy auth-modules auth-tokens)
# Auth is tested end to end by the root package's tests. cargo-mutants runs
# its unmutated baseline on the mutated package alone, where those targets
# do not exist, so the Auth groups skip it (CI runs the same tests).
auth_tests=(--lib --test auth --test auth_abuse --test organizations --test login_sessions --test up)

run() { # $1 = group; the rest are cargo-mutants arguments
  local group=$1 out=target/mutants/$1
  shift
  mkdir -p "$out"
  echo "=== $group"
  # Exit code 2 means some mutants were missed: reported below, not fatal.
  cargo mutants -j "${JOBS:-1}" -o "$out" "$@" || [ $? -eq 2 ]
}

for group in "${groups[@]}"; do
  case $group in
    tenancy)
      run tenancy -p trellis-tenancy --test-package trellis-tenancy \
        -f verifier.rs -f server.rs -f session_guard.rs -f jwks.rs -f claims.rs -f client_address.rs ;;
    auth-modules)
      run auth-modules --workspace --test-workspace=true --baseline=skip --timeout 300 \
        -f services/auth/src/throttle.rs -f services/auth/src/keys.rs \
        -f services/auth/src/sessions.rs -f 'services/auth/src/**/sessions.rs' \
        -- "${auth_tests[@]}" ;;
    auth-tokens)
      run auth-tokens --workspace --test-workspace=true --baseline=skip --timeout 300 \
        -f services/auth/src/tokens.rs -f services/auth/src/api.rs -f services/auth/src/api/auth.rs \
        -f services/auth/src/store.rs \
        -F 'new_opaque_token|token_hash|access_token|AuthApi::refresh|AuthApi::reused|refresh_token|rotate_refresh|record_login' \
        -- "${auth_tests[@]}" ;;
    *) echo "unknown group $group (tenancy, auth-modules, auth-tokens)" >&2; exit 2 ;;
  esac
done

echo
for group in "${groups[@]}"; do
  dir=target/mutants/$group/mutants.out
  count() { [ -f "$dir/$1.txt" ] && grep -c . "$dir/$1.txt" || echo 0; }
  printf '%-13s caught %3s  missed %3s  unviable %3s  timeout %3s\n' "$group" \
    "$(count caught)" "$(count missed)" "$(count unviable)" "$(count timeout)"
done
