"""Authentication: identities, tokens, passwords, magic links and passkeys."""
