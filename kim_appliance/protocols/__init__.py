"""Sans-IO protocol cores: SMTP, POP3 and LDAP as pure state machines.

Each core turns received bytes into events and the application's answers into bytes
(``receive_data``, ``next_event``, ``send``). Nothing in this package may open a socket, import
trio, touch the disk or know about the components (Fachdienst, Clientmodul) that drive it.
"""
