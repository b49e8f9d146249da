#!/usr/bin/env bash
# Builds the ringseal runtime image without a registry: the same image as the Dockerfile's last stage
# (binary at /usr/local/bin/ringseal, uid 65532, entrypoint, command, ports), on a base assembled
# from Debian packages instead of gcr.io/distroless/cc-debian12. Needs root, buildah, apt-get,
# dpkg-deb, readelf (binutils) and a Debian mirror, or the .deb files in $RINGSEAL_DEBS.
#
#   config/container/build-local.sh target/release/ringseal [localhost/ringseal:latest]
#
# The image holds the binary (stripped, as the Dockerfile does), the shared libraries it needs
# (from its ELF NEEDED entries, followed through each library), the CA bundle, an /etc/passwd and
# /etc/group naming uid 65532 as distroless does, and empty /tmp and /etc/ringseal. No shell.
set -euo pipefail

binary=${1:?usage: $0 BINARY [IMAGE]}
image=${2:-localhost/ringseal:latest}
[[ -f $binary ]] || { echo "$0: $binary: no such file" >&2; exit 64; }

work=$(mktemp -d)
ctr=
trap 'if [[ -n $ctr ]]; then buildah rm "$ctr" >/dev/null; fi; rm -rf "$work"' EXIT
umask 022
chmod 755 "$work"
mkdir "$work/debs" "$work/pkgs" "$work/root"
# apt-get download fetches as the _apt user, which must be able to write there.
if id _apt >/dev/null 2>&1; then chown _apt "$work/debs"; fi

# libc6 brings the dynamic loader, libc and libm; libgcc-s1 the unwinder Rust links against.
if [[ -n ${RINGSEAL_DEBS:-} ]]; then
  cp "$RINGSEAL_DEBS"/{libc6,libgcc-s1,ca-certificates}_*.deb "$work/debs/"
else
  (cd "$work/debs" && apt-get download -qq libc6 libgcc-s1 ca-certificates)
fi
for deb in "$work"/debs/*.deb; do
  dpkg-deb -x "$deb" "$work/pkgs"
done

root=$work/root
install -d "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/etc/ringseal"
install -d -m 1777 "$root/tmp"
install -m 755 "$binary" "$root/usr/local/bin/ringseal"
strip "$root/usr/local/bin/ringseal"

# The loader at the path the binary names (in Debian a symlink into the multiarch directory), then
# every library in the NEEDED closure, each at the path it has in its package.
interp=$(readelf -l "$root/usr/local/bin/ringseal" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
[[ -e $work/pkgs$interp || -L $work/pkgs$interp ]] || { echo "$0: $interp is in none of the packages" >&2; exit 1; }
install -d "$root$(dirname "$interp")"
cp -P "$work/pkgs$interp" "$root$interp"
queue=("$root/usr/local/bin/ringseal")
seen=" "
while ((${#queue[@]})); do
  elf=${queue[0]}
  queue=("${queue[@]:1}")
  for lib in $(readelf -d "$elf" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    [[ $seen == *" $lib "* ]] && continue
    seen+="$lib "
    src=$(find "$work/pkgs" -name "$lib" \( -type f -o -type l \) -print -quit)
    [[ -n $src ]] || { echo "$0: $lib (needed by $(basename "$elf")) is in none of the packages" >&2; exit 1; }
    rel=${src#"$work/pkgs"}
    install -D -m 755 "$(readlink -f "$src")" "$root$rel"
    queue+=("$root$rel")
  done
done

# What update-ca-certificates makes at install time (dpkg-deb -x runs no maintainer script): every
# certificate the package ships, in one bundle, where distroless has it.
cat "$work"/pkgs/usr/share/ca-certificates/*/*.crt >"$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
  >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"

ctr=$(buildah from scratch)
buildah copy --quiet "$ctr" "$root" / >/dev/null
# As the Dockerfile's runtime stage (cli/tests/container.rs checks they agree).
buildah config \
  --user 65532:65532 \
  --port 7001/tcp --port 9464/tcp \
  --env GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=0x100000 \
  --entrypoint '["/usr/local/bin/ringseal", "run"]' \
  --cmd '["--config", "/etc/ringseal/ringseal.toml"]' \
  "$ctr"
buildah commit --quiet --rm "$ctr" "$image" >/dev/null
ctr=
echo "$image"
