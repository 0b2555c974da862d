#!/bin/bash
# Build a Linux 4.19 tree the way an XCP-ng 8.x dom0 kernel is configured (`uname -r` 4.19.0+1)
# and package its module build tree as a kernel-devel RPM laid out like XCP-ng's
# (/usr/src/kernels/4.19.0+1-x86_64 plus /lib/modules/4.19.0+1/{build,source}).
#
# usage: xcpng-4.19-kernel-devel.sh CHECKOUT CONFIG [OUTDIR]
#   CHECKOUT  a vanilla 4.19.x source tree (built in place)
#   CONFIG    the vendor's kernel config (xcp-ng-rpms/kernel SOURCES/kernel-x86_64.config)
#   OUTDIR    where the RPM, the logs and the olddefconfig diff go (default: CHECKOUT/..)
# environment:
#   JOBS      parallel make jobs (default: nproc)
#   MODULES   "all" (default): make modules; or a space-separated list of directories
#             (e.g. "lib/ crypto/ drivers/infiniband/core/ drivers/block/") whose modules are
#             built, followed by one modpost run, for a Module.symvers covering vmlinux and them
#   SKIP_BUILD=1  reuse an already built tree (package and check only)
#
# Written for a Debian 12 host (gcc 12, binutils 2.40). Needs: make gcc bc flex bison
# libelf-dev libssl-dev rpm cpio.
set -euo pipefail

die() { echo "error: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: $0 CHECKOUT CONFIG [OUTDIR]"
SRC=$(realpath "$1")
CONFIG=$(realpath "$2")
OUT=$(realpath -m "${3:-$SRC/..}")
JOBS=${JOBS:-$(nproc)}
MODULES=${MODULES:-all}
RELEASE=4.19.0+1
KDIRNAME=$RELEASE-x86_64
RPM_VERSION=4.19.13
RPM_RELEASE=1.check
mkdir -p "$OUT"

[ -f "$SRC/Makefile" ] || die "$SRC has no Makefile"
[ -f "$CONFIG" ] || die "no config at $CONFIG"
if ! grep -q '^VERSION = 4$' "$SRC/Makefile" || ! grep -q '^PATCHLEVEL = 19$' "$SRC/Makefile"; then
    die "$SRC is not a 4.19 tree"
fi
# The snapshot this was first made from carried syscall hooks; refuse a tree that still has them.
if grep -qE 'do_sys_open_hook|__close_fd_hook|ksys_write_hook' \
        "$SRC/fs/open.c" "$SRC/fs/file.c" "$SRC/fs/read_write.c"; then
    die "fs/open.c, fs/file.c or fs/read_write.c are not vanilla (syscall hooks found)"
fi

kmake() { make -C "$SRC" WERROR=0 LOCALVERSION= "$@"; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    # The release XCP-ng's abi-version patch gives: 4.19.0+1.
    # (Every edit below is made only when needed: rewriting a file that objects depend on,
    # like objtool's sources, would make a rerun rebuild the whole tree.)
    if ! grep -q '^SUBLEVEL = 0$' "$SRC/Makefile" || ! grep -q '^EXTRAVERSION = +1$' "$SRC/Makefile"; then
        sed -i -e 's/^SUBLEVEL = .*/SUBLEVEL = 0/' -e 's/^EXTRAVERSION = .*/EXTRAVERSION = +1/' \
            "$SRC/Makefile"
    fi
    # No "+" from a git checkout in the release string (scripts/setlocalversion reads this).
    [ -e "$SRC/.scmversion" ] || : > "$SRC/.scmversion"
    # objtool: binutils >= 2.36 leaves the empty .tmp_thunk_64.o without a symbol table; an
    # object without symbols has nothing to check (as later upstream objtool treats it).
    if grep -q 'WARN("missing symbol table");' "$SRC/tools/objtool/elf.c"; then
        perl -0pi -e 's/WARN\("missing symbol table"\);\s*return -1;/return 0; \/* no symbols: nothing to check *\//' \
            "$SRC/tools/objtool/elf.c"
    fi
    if grep -A1 'missing symbol table' "$SRC/tools/objtool/elf.c" | grep -q 'return -1'; then
        die "could not adjust tools/objtool/elf.c"
    fi

    # the vendor's config, unless this tree already holds the result of olddefconfig on it
    if ! { [ -f "$SRC/.config.vendor" ] && cmp -s "$CONFIG" "$SRC/.config.vendor"; }; then
        cp "$CONFIG" "$SRC/.config"
        cp "$CONFIG" "$SRC/.config.vendor"
    fi
    kmake olddefconfig
    diff "$CONFIG" "$SRC/.config" > "$OUT/olddefconfig.diff" || true
    gcc --version | head -n1 > "$OUT/gcc-version.txt"

    kmake -j"$JOBS" vmlinux > "$OUT/build-vmlinux.log" 2>&1 \
        || die "make vmlinux failed (see $OUT/build-vmlinux.log)"
    if [ "$MODULES" = all ]; then
        # Every module but the Netronome NIC driver: with gcc 12, nfp's bpf/jit.c fails a
        # BUILD_BUG_ON inside FIELD_PREP and stops `make modules` (and with it modpost).
        # CONFIG_NFP= on the command line only skips building it; .config is unchanged.
        kmake -j"$JOBS" CONFIG_NFP= modules > "$OUT/build-modules.log" 2>&1 \
            || die "make modules failed (see $OUT/build-modules.log)"
    else
        # shellcheck disable=SC2086
        kmake -j"$JOBS" $MODULES > "$OUT/build-modules.log" 2>&1 \
            || die "module directories failed (see $OUT/build-modules.log)"
        kmake -f "$SRC/scripts/Makefile.modpost" >> "$OUT/build-modules.log" 2>&1 \
            || die "modpost failed (see $OUT/build-modules.log)"
    fi
fi

got=$(kmake -s kernelrelease)
[ "$got" = "$RELEASE" ] || die "kernel release is '$got', expected $RELEASE"
grep -q "UTS_RELEASE \"$RELEASE\"" "$SRC/include/generated/utsrelease.h" \
    || die "include/generated/utsrelease.h does not say $RELEASE"
for f in Module.symvers System.map include/config/auto.conf include/config/kernel.release \
         tools/objtool/objtool scripts/mod/modpost scripts/genksyms/genksyms; do
    [ -s "$SRC/$f" ] || die "$f is missing from the built tree"
done

# ---- stage the module build tree ----
WORK=$OUT/kernel-devel-work
STAGE=$WORK/root
DEVEL=$STAGE/usr/src/kernels/$KDIRNAME
rm -rf "$WORK"
mkdir -p "$DEVEL"
(
    cd "$SRC"
    # every kbuild file of the tree (small; `make M=` and Kconfig include them by path)
    find . -path ./.git -prune -o -path ./tools/testing -prune -o -type f \
        \( -name 'Makefile*' -o -name 'Kconfig*' -o -name 'Kbuild*' \) -print0 \
        | cpio --quiet -0 -pdm "$DEVEL"
    cp -a .config Module.symvers System.map "$DEVEL/"
    # headers, generated headers and the config state (include/config: auto.conf,
    # kernel.release, tristate.conf and the per-option files fixdep refers to)
    cp -a include "$DEVEL/"
    mkdir -p "$DEVEL/arch/x86"
    cp -a arch/x86/include "$DEVEL/arch/x86/"
    # scripts with their built host programs, without objects and build records
    cp -a scripts "$DEVEL/"
    find "$DEVEL/scripts" \( -name '*.o' -o -name '.*.cmd' -o -name '.*.d' \) -delete
    # objtool runs on every module object of this tree (CONFIG_STACK_VALIDATION=y)
    mkdir -p "$DEVEL/tools/objtool"
    cp -a tools/objtool/objtool "$DEVEL/tools/objtool/"
)
mkdir -p "$STAGE/lib/modules/$RELEASE"
ln -s "/usr/src/kernels/$KDIRNAME" "$STAGE/lib/modules/$RELEASE/build"
ln -s build "$STAGE/lib/modules/$RELEASE/source"

# ---- the RPM ----
TOP=$WORK/rpmbuild
mkdir -p "$TOP"/{SPECS,RPMS,BUILD,BUILDROOT,SOURCES,SRPMS}
cat > "$TOP/SPECS/kernel-devel.spec" <<EOF
%global debug_package %{nil}
%global __os_install_post %{nil}
%global _build_id_links none
Name: kernel-devel
Version: $RPM_VERSION
Release: $RPM_RELEASE
Summary: Vanilla Linux $RPM_VERSION built with XCP-ng 8.3's kernel config as $RELEASE (for checks only)
License: GPLv2
AutoReqProv: no
Provides: kernel-devel-uname-r = $RELEASE
Provides: kernel-devel-x86_64 = %{version}-%{release}

%description
Module build tree of vanilla Linux $RPM_VERSION (kernel.org) configured with XCP-ng 8.3's
kernel-x86_64.config and given XCP-ng's kernel release $RELEASE (SUBLEVEL 0, EXTRAVERSION +1),
built with $(gcc --version | head -n1). It is not XCP-ng's kernel (no vendor patches); it exists to
check that external modules build against a tree laid out like XCP-ng's kernel-devel.

%install
mkdir -p %{buildroot}
cp -a $STAGE/. %{buildroot}/

%files
%defattr(-,root,root)
/usr/src/kernels/$KDIRNAME
%dir /lib/modules/$RELEASE
/lib/modules/$RELEASE/build
/lib/modules/$RELEASE/source
EOF
rpmbuild -bb --target x86_64 \
    --define "_topdir $TOP" \
    --define "_buildhost xcpng-tree-check" \
    "$TOP/SPECS/kernel-devel.spec" > "$OUT/rpmbuild-kernel-devel.log" 2>&1 \
    || die "rpmbuild failed (see $OUT/rpmbuild-kernel-devel.log)"
RPM=$(find "$TOP/RPMS" -name "kernel-devel-$RPM_VERSION-$RPM_RELEASE.x86_64.rpm" | head -n1)
[ -n "$RPM" ] || die "no RPM came out of rpmbuild"
cp "$RPM" "$OUT/"
RPM=$OUT/$(basename "$RPM")

# ---- check: an external module builds against the installed layout ----
CHECK=$WORK/check
mkdir -p "$CHECK/root" "$CHECK/hello"
(cd "$CHECK/root" && rpm2cpio "$RPM" | cpio --quiet -idm)
KDIR=$CHECK/root/usr/src/kernels/$KDIRNAME
grep -q "UTS_RELEASE \"$RELEASE\"" "$KDIR/include/generated/utsrelease.h" \
    || die "packaged utsrelease.h does not say $RELEASE"
cat > "$CHECK/hello/hello.c" <<'EOF'
#include <linux/module.h>
#include <linux/init.h>
#include <linux/lru_cache.h>

static int __init hello_init(void)
{
	pr_info("hello: loaded\n");
	/* one symbol from another module (lru_cache), so modpost needs Module.symvers */
	pr_info("hello: lc_create at %p\n", lc_create);
	return 0;
}

static void __exit hello_exit(void)
{
}

module_init(hello_init);
module_exit(hello_exit);
MODULE_LICENSE("GPL");
EOF
echo 'obj-m := hello.o' > "$CHECK/hello/Makefile"
make -C "$KDIR" M="$CHECK/hello" modules > "$OUT/hello-module.log" 2>&1 \
    || die "external module did not build (see $OUT/hello-module.log)"
vermagic=$(modinfo -F vermagic "$CHECK/hello/hello.ko")
case $vermagic in
    "$RELEASE "*) ;;
    *) die "hello.ko vermagic is '$vermagic'" ;;
esac
if grep -q 'undefined!' "$OUT/hello-module.log"; then
    die "modpost found undefined symbols (see $OUT/hello-module.log)"
fi
echo "kernel-devel RPM: $RPM"
echo "hello.ko vermagic: $vermagic"
