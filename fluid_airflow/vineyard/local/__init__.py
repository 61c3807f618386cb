"""Local daemons for laptop mode and the tests: vineyardd (:mod:`.daemon`), etcd (:mod:`.etcd`), a local
cluster of instances sharing etcd (:mod:`.cluster`), and what they need from the machine
(:mod:`.resources`)."""
