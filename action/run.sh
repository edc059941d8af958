#!/usr/bin/env bash
# Runs nixprox for the composite action. Inputs arrive as ACTION_* variables (never expanded
# into the script text); the `token` input as NIXPROX_ACTION_TOKEN, named with `--token-env` so
# that it wins over the runner's own GITHUB_TOKEN/FORGEJO_TOKEN (Forgejo runners set both, and a
# step's `env:` overrides only the name it sets).
set -euo pipefail

# Makes the base commit of the NixOS changes available: a checkout of depth 1 lacks it. The
# token goes to git through GIT_CONFIG_* (never on a command line, where other users of the
# machine could read it), as the Authorization header `actions/checkout` itself uses; with
# `persist-credentials: false` the checkout kept none. A failed fetch is a warning: the plan
# then says in one line that the base is missing.
fetch_base() {
  local dir="$1" base="$2"
  git -C "$dir" rev-parse --git-dir >/dev/null 2>&1 || return 0
  git -C "$dir" cat-file -e "${base}^{commit}" 2>/dev/null && return 0
  if ! (
    if [[ -n "${NIXPROX_ACTION_TOKEN:-}" ]]; then
      basic="$(printf 'x-access-token:%s' "$NIXPROX_ACTION_TOKEN" | base64 | tr -d '\n')"
      echo "::add-mask::$basic"
      export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=http.extraheader
      export GIT_CONFIG_VALUE_0="AUTHORIZATION: basic $basic"
    fi
    git -C "$dir" fetch --quiet --no-tags --depth=1 origin "$base"
  ); then
    echo "::warning::could not fetch the base commit \`$base\`: the plan shows no NixOS changes (fetch it yourself or check out with \`fetch-depth: 0\`)" >&2
  fi
}

args=()
case "${ACTION_COMMAND:-plan}" in
  plan)
    args+=(plan)
    [[ "${ACTION_COMMENT:-true}" == "true" ]] && args+=(--comment)
    [[ "${ACTION_COMMENT_REQUIRED:-false}" == "true" ]] && args+=(--comment-required)
    case "${ACTION_BASE:-}" in
      "") ;;
      none) args+=(--no-base) ;;
      *)
        if [[ "${ACTION_FETCH_BASE:-true}" == "true" && -d "${ACTION_FLAKE:-.}" ]]; then
          fetch_base "${ACTION_FLAKE:-.}" "$ACTION_BASE"
        fi
        args+=(--base "$ACTION_BASE")
        ;;
    esac
    ;;
  apply)
    args+=(apply)
    [[ "${ACTION_COMMENT:-true}" == "true" ]] && args+=(--comment)
    ;;
  drift) args+=(drift --issue) ;;
  *)
    echo "::error::unknown command input \`${ACTION_COMMAND}\` (expected plan, apply or drift)" >&2
    exit 1
    ;;
esac
[[ -n "${ACTION_FLAKE:-}" ]] && args+=(--flake "$ACTION_FLAKE")
[[ -n "${ACTION_CONFIG:-}" ]] && args+=(--config "$ACTION_CONFIG")
# `--token-env` given in `args` is the user's explicit choice: do not add a second one.
if [[ -n "${NIXPROX_ACTION_TOKEN:-}" && " ${ACTION_ARGS:-} " != *" --token-env"* ]]; then
  args+=(--token-env NIXPROX_ACTION_TOKEN)
fi
[[ -n "${ACTION_BOT_LOGIN:-}" ]] && args+=(--bot-login "$ACTION_BOT_LOGIN")
if [[ -n "${ACTION_ARGS:-}" ]]; then
  read -r -a extra <<<"$ACTION_ARGS"
  args+=("${extra[@]}")
fi

exec nixprox "${args[@]}"
