"""What is held and for how long: run-end release, gc, inventory, memory admission, the put journal and
its reclaim, copies on other instances (locations, migration), the one delete (:mod:`.delete`), and every
question to Airflow's DB (:mod:`.metadb`)."""
