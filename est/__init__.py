"""The EST front-end (RFC 7030): enrollment over HTTPS, a producer that holds no CA key."""
