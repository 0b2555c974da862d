#!/bin/sh
# Print the release (`uname -r`) of the kernel build tree in $KDIR.
for header in include/generated/utsrelease.h include/linux/utsrelease.h include/linux/version.h; do
    if [ -e "$KDIR/$header" ]; then
        sed -n 's/^#define UTS_RELEASE "\(.*\)".*/\1/p' "$KDIR/$header" | head -n 1
        exit 0
    fi
done
echo "no utsrelease header in $KDIR" >&2
exit 1
