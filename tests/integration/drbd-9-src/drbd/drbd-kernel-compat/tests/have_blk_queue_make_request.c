/* Compile test: blk_queue_make_request() exists (removed in Linux 5.9). */
#include <linux/module.h>
#include <linux/blkdev.h>

void compat_test(struct request_queue *q)
{
	blk_queue_make_request(q, NULL);
}
MODULE_LICENSE("GPL");
