//! Runs the commands: glues the modules together in the order of the data flow.
