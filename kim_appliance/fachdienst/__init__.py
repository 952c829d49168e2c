"""The KIM Fachdienst: mail server, relay, delivery reports, Account Manager and KAS (digest §3)."""
