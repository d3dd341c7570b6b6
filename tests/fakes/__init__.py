"""Hand-written fakes that speak real wire protocols over loopback, for the test suite."""
