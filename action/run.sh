#!/usr/bin/env bash
# Runs nixprox for the composite action. Inputs arrive as ACTION_* variables (never expanded
# into the script text); the `token` input as NIXPROX_ACTION_TOKEN, named with `--token-env` so
# that it wins over the runner's own GITHUB_TOKEN/FORGEJO_TOKEN (Forgejo runners set both, and a
# step's `env:` overrides only the name it sets).
set -euo pipefail

args=()
case "${ACTION_COMMAND:-plan}" in
  plan)
    args+=(plan)
    [[ "${ACTION_COMMENT:-true}" == "true" ]] && args+=(--comment)
    [[ "${ACTION_COMMENT_REQUIRED:-false}" == "true" ]] && args+=(--comment-required)
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
