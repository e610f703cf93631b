"""What the shared machine is doing, for people: the status document, its page, its command.

`document` builds the status document from the state foreman already
keeps (`foreman.ledger` holds what finished requests leave behind);
`page/` is the page served at /foreman/; `terminal` is `foreman status`,
a client of the document.
"""
