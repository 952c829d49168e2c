"""The Clientmodul: the SMTP/POP3 proxy the practice software talks to (digest §1)."""
