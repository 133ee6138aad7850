"""Image encoders written in the project (no torchvision): each returns features at 1/4, 1/8, 1/16."""
