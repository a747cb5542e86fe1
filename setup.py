from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="custseg",
    version="0.1.0",
    description="Customer segmentation on Apache Spark and Delta Lake",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    package_data={"custseg": ["log4j2.properties"]},
    python_requires=">=3.11",
    # Ranges here; the exact, tested pins are in requirements.txt.
    install_requires=[
        "pyspark>=4.2,<4.3",
        "delta-spark>=4.4,<4.5",
        "pandas>=2.2,<3",
        "pyarrow>=18",
        "PyYAML>=6",
        "matplotlib>=3.8",
        "scipy>=1.11",
    ],
    extras_require={
        "connect": ["pyspark[connect]>=4.2,<4.3"],
        "mlflow": ["mlflow>=3.4"],
        # custseg export to PostgreSQL: the upsert's transaction runs from Python
        "crm": ["psycopg[binary]>=3.2,<4"],
        "test": ["chispa>=0.12", "pytest>=8"],
    },
    entry_points={"console_scripts": ["custseg=custseg.cli:main"]},
)
