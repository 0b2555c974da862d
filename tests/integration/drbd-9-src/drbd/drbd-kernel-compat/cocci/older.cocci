// The compat patch for kernels without blk_alloc_disk(): marks the load message.
@@
@@
- pr_info("drbd: test module loaded\n");
+ pr_info("drbd: test module loaded (compat: older kernel)\n");
