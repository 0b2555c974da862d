// The compat patch for kernels with blk_alloc_disk(): marks the load message.
@@
@@
- pr_info("drbd: test module loaded\n");
+ pr_info("drbd: test module loaded (compat: blk_alloc_disk)\n");
