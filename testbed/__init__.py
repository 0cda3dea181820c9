"""The sandbox's modules: the sandbox itself (sandbox_server), its IAM (sandbox_iam) and its
account (sandbox_ec2). sandbox.py, at the top, is its entry point."""
