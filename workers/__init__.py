"""RQ jobs and the `tally worker` process that runs them."""
