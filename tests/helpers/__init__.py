"""What several test modules share: paths and the smoke config, tiny models, servers
started in a thread, fault injection, and the slow reference implementations the fast
production code is checked against. Test modules import from here, never from each
other."""
