// The compat patch for kernels with blk_alloc_disk(): marks the load message.
// Like DRBD's own rules, it has a python part, so spatch must load its Python library.
@initialize:python@
@@
marker = "blk_alloc_disk"

@@
@@
- pr_info("drbd: test module loaded\n");
+ pr_info("drbd: test module loaded (compat: blk_alloc_disk)\n");
