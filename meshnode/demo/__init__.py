"""demo: `meshnode demo`, two tiny HTTP apps talking through a fresh node over mutual TLS."""
