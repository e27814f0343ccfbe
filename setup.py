"""Packaging for wsha, a high-availability WebSocket gateway on Twisted."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="wsha",
    version="0.1.0",
    description="High-availability WebSocket gateway on Twisted, Redis and Kafka",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=[*find_packages(exclude=["tests", "tests.*"]), "twisted.plugins"],
    package_data={"twisted": ["plugins/wsha_plugin.py"], "wsha.lua": ["*.lua"]},
    install_requires=[
        "Twisted>=24.3,<27",
        "autobahn>=24.4,<27",
        "txredisapi>=1.4.10,<2",
        "confluent-kafka>=2.4,<3",
        "PyJWT>=2.8,<3",
        "prometheus_client>=0.20,<1",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-twisted>=1.14,<2",
            "pytest-timeout>=2.3,<3",
            "ruff>=0.5",
            "mypy>=1.10",
            "mypy-zope>=1.0",
        ],
    },
    entry_points={
        "console_scripts": [
            "wsha-token = wsha.token:main",
            "wsha-admin = wsha.admin:main",
            "wsha-discovery = wsha.discovery:main",
        ],
    },
)
