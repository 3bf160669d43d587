"""Restores (SPEC §5): a request is opened (``requests``), decided by approvers or
its requester or its expiry (``decisions``), and executed at most once
(``execution``); ``message`` keeps its channel message showing where it stands."""
