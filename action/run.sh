#!/usr/bin/env bash
# Runs nixprox for the composite action. Inputs arrive as ACTION_* variables (never expanded
# into the script text); the forge token as GITHUB_TOKEN, which nixprox reads by default.
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
if [[ -n "${ACTION_ARGS:-}" ]]; then
  read -r -a extra <<<"$ACTION_ARGS"
  args+=("${extra[@]}")
fi

exec nixprox "${args[@]}"
