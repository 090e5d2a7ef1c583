#!/usr/bin/env bash
# Builds the static binaries (CGO_ENABLED=0) and the two images of a vmprep
# deployment from them, tagged locally: no registry is needed or used.
#
#   deploy/docker/build.sh            # vmprep:local and vmprep-nats:local
#   VMPREP_IMAGE_TAG=dev deploy/docker/build.sh
#   VMPREP_BIN_DIR=DIR deploy/docker/build.sh   # keeps the binaries in DIR
#
# nats-server is built from the version go.mod pins. Go's build cache makes a
# rebuild after a small change take seconds.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tag=${VMPREP_IMAGE_TAG:-local}

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -m 0755 "$ctx/empty"
bin=${VMPREP_BIN_DIR:-$ctx}
mkdir -p "$bin"

cd "$root"
export CGO_ENABLED=0
go build -trimpath -ldflags=-s -o "$bin/" ./cmd/resolver ./cmd/fetcher ./cmd/verifier ./cmd/converter ./cmd/vmprep
go build -trimpath -ldflags=-s -o "$bin/nats-server" github.com/nats-io/nats-server/v2
if [ "$bin" != "$ctx" ]; then
  for b in resolver fetcher verifier converter vmprep nats-server; do cp "$bin/$b" "$ctx/$b"; done
fi

# The legacy builder warns that it is deprecated; BuildKit (buildx) is used
# when installed.
for target in nats vmprep; do
  image=vmprep:$tag
  [ "$target" = nats ] && image=vmprep-nats:$tag
  docker build --quiet --file "$here/Dockerfile" --target "$target" --tag "$image" "$ctx" >/dev/null
  echo "built $image"
done
