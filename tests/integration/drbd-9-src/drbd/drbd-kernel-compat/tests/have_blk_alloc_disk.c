/* Compile test: blk_alloc_disk() exists (Linux 5.14 and later). */
#include <linux/module.h>
#include <linux/blkdev.h>

struct gendisk *compat_test(void)
{
	return blk_alloc_disk(NUMA_NO_NODE);
}
MODULE_LICENSE("GPL");
