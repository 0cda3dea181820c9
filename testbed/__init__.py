"""The sandbox's modules: its IAM (sandbox_iam) and its account (sandbox_ec2). sandbox.py, at the
top, is its entry point."""
