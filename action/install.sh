#!/usr/bin/env bash
# Installs nixprox for the composite action: the released static (musl) binary that matches the
# runner, verified against the release's SHA256SUMS, or a build of the action's own checkout
# when ACTION_VERSION is `source`. Puts it on GITHUB_PATH.
set -euo pipefail

version="${ACTION_VERSION:-latest}"
repository="${ACTION_REPOSITORY:-nixprox/nixprox}"
bin_dir="${RUNNER_TEMP:-/tmp}/nixprox-bin"
mkdir -p "$bin_dir"

if [[ "$version" == "source" ]]; then
  if ! command -v cargo >/dev/null; then
    echo "::error::version: source needs cargo on the runner (install Rust with rustup first)" >&2
    exit 1
  fi
  echo "building nixprox from ${ACTION_PATH}" >&2
  cargo install --locked --path "$ACTION_PATH" --root "${RUNNER_TEMP:-/tmp}/nixprox-cargo" >&2
  cp "${RUNNER_TEMP:-/tmp}/nixprox-cargo/bin/nixprox" "$bin_dir/nixprox"
else
  if [[ ! "$repository" =~ ^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$ ]]; then
    echo "::error::malformed repository input \`$repository\` (expected owner/name)" >&2
    exit 1
  fi
  if [[ "$version" != "latest" && ! "$version" =~ ^v[0-9]+\.[0-9]+\.[0-9]+([-.+][A-Za-z0-9.]+)?$ ]]; then
    echo "::error::malformed version input \`$version\` (expected a tag such as v0.1.0, latest, or source)" >&2
    exit 1
  fi
  case "$(uname -s)-$(uname -m)" in
    Linux-x86_64 | Linux-amd64) target=x86_64-unknown-linux-musl ;;
    Linux-aarch64 | Linux-arm64) target=aarch64-unknown-linux-musl ;;
    *)
      echo "::error::no nixprox release for $(uname -s) $(uname -m); use version: source" >&2
      exit 1
      ;;
  esac
  if ! command -v curl >/dev/null; then
    echo "::error::the install step needs curl on the runner's PATH to download the release (nixosModules.runner puts it there; on another runner, install curl)" >&2
    exit 1
  fi
  if [[ "$version" == "latest" ]]; then
    base="https://github.com/${repository}/releases/latest/download"
  else
    base="https://github.com/${repository}/releases/download/${version}"
  fi
  asset="nixprox-${target}"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  echo "downloading ${base}/${asset}" >&2
  curl --fail --silent --show-error --location --retry 3 --proto '=https' --tlsv1.2 \
    --output "$work/$asset" "$base/$asset"
  curl --fail --silent --show-error --location --retry 3 --proto '=https' --tlsv1.2 \
    --output "$work/SHA256SUMS" "$base/SHA256SUMS"
  # Exactly the line for our asset; refuse when it is missing.
  if ! grep -E "^[0-9a-f]{64}  ${asset}\$" "$work/SHA256SUMS" >"$work/check"; then
    echo "::error::SHA256SUMS of ${version} has no entry for ${asset}" >&2
    exit 1
  fi
  (cd "$work" && sha256sum --check --strict "check") >&2
  install -m 0755 "$work/$asset" "$bin_dir/nixprox"
fi

echo "$bin_dir" >>"$GITHUB_PATH"
"$bin_dir/nixprox" --version >&2 || true
