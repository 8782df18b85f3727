"""The operators' dashboard, served by `tally serve` under /dashboard: server-rendered pages,
plain forms, one small script for copy buttons, no build step and nothing fetched at run time."""
