"""What the shared machine is doing, for people: the status document, its page, its command.

`ledger` keeps what finished requests leave behind (the last hundred, an
hour by the minute); `document` builds the status document from that and
from the state foreman already keeps; `page/` is the page served at
/foreman/; `terminal` is `foreman status`, a client of the document.
"""
