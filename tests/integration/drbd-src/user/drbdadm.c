/* A small userland program standing in for drbdadm. */
#include <stdio.h>
#include <string.h>

static const char *version = DRBD_VERSION;

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "--version") == 0) {
		printf("DRBDADM_VERSION=%s\n", version);
		return 0;
	}
	fprintf(stderr, "usage: drbdadm --version\n");
	return 20;
}
