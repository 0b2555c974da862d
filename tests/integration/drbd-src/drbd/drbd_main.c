// SPDX-License-Identifier: GPL-2.0-or-later
/* A small real kernel module standing in for DRBD's. */
#include <linux/init.h>
#include <linux/module.h>

static int __init drbd_init(void)
{
	pr_info("drbd: test module loaded\n");
	return 0;
}

static void __exit drbd_cleanup(void)
{
	pr_info("drbd: test module unloaded\n");
}

module_init(drbd_init);
module_exit(drbd_cleanup);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("DRBD-shaped test module");
